-- Argo CD health of a ferry.dev ConnectorRun, from its conditions and phase.
local hs = {status = "Progressing", message = "waiting for the Ferry operator"}
if obj.status == nil then
  return hs
end
local function message()
  return (obj.status.reason or "") .. ": " .. (obj.status.message or "")
end
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Complete" and c.status == "True" then
    return {status = "Healthy", message = obj.status.message or "succeeded"}
  end
  if c.type == "Failed" and c.status == "True" then
    return {status = "Degraded", message = message()}
  end
end
local phase = obj.status.phase
if phase == "Succeeded" then
  return {status = "Healthy", message = obj.status.message or "succeeded"}
end
if phase == "Failed" or phase == "Rejected" then
  return {status = "Degraded", message = message()}
end
if phase == "Running" then
  hs.message = "running"
elseif phase == "Pending" and obj.status.reason ~= nil then
  hs.message = message()
elseif phase == "Pending" then
  hs.message = "pending"
end
return hs
