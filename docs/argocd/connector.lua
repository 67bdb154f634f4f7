-- Argo CD health of a ferry.dev Connector, from its conditions.
local hs = {status = "Progressing", message = "waiting for the Ferry operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "the Ferry operator has not seen the latest change yet"
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  return {status = "Suspended", message = "spec.suspend is true: no scheduled run starts"}
end
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Ready" then
    if c.status == "True" then
      return {status = "Healthy", message = c.message or ""}
    end
    if c.status == "False" then
      return {status = "Degraded", message = (c.reason or "NotReady") .. ": " .. (c.message or "")}
    end
  end
end
return hs
