-- Runs the Argo CD health checks of docs/argocd/ under a real Lua 5.4 against
-- sample objects, one for every health state.
local root = arg[0]:match("^(.*)/tests/argocd/") or "."
local function check(script, obj)
  local chunk = assert(loadfile(root .. "/docs/argocd/" .. script, "t", {obj = obj, ipairs = ipairs}))
  return chunk()
end

local failures, count = 0, 0
local function expect(script, name, obj, status, message_part)
  count = count + 1
  local hs = check(script, obj)
  local ok = hs.status == status and (message_part == nil or string.find(hs.message, message_part, 1, true))
  if not ok then
    failures = failures + 1
    print(string.format("FAIL %s %s: got %s %q, want %s %q", script, name, hs.status, hs.message, status, message_part or ""))
  end
end

local c = "connector.lua"
expect(c, "no status yet", {metadata = {generation = 1}, spec = {}}, "Progressing")
expect(c, "stale generation", {metadata = {generation = 2}, spec = {},
  status = {observedGeneration = 1, conditions = {{type = "Ready", status = "True"}}}}, "Progressing", "latest change")
expect(c, "ready", {metadata = {generation = 2}, spec = {},
  status = {observedGeneration = 2, conditions = {{type = "Ready", status = "True", reason = "Scheduled", message = "runs start on schedule"}}}},
  "Healthy", "on schedule")
expect(c, "suspended", {metadata = {generation = 3}, spec = {suspend = true},
  status = {observedGeneration = 3, conditions = {{type = "Ready", status = "True"}}}}, "Suspended")
expect(c, "missing secret", {metadata = {generation = 1}, spec = {},
  status = {observedGeneration = 1, conditions = {{type = "Suspended", status = "False"},
    {type = "Ready", status = "False", reason = "SecretNotFound", message = "Secret \"kek\" does not exist"}}}},
  "Degraded", "SecretNotFound")
expect(c, "no Ready condition yet", {metadata = {generation = 1}, spec = {}, status = {observedGeneration = 1}}, "Progressing")

local r = "connectorrun.lua"
expect(r, "new", {metadata = {}, spec = {}}, "Progressing")
expect(r, "pending", {metadata = {}, status = {phase = "Pending"}}, "Progressing", "pending")
expect(r, "backing off", {metadata = {}, status = {phase = "Pending", reason = "RunnerFailed", message = "retrying in 20s"}},
  "Progressing", "RunnerFailed")
expect(r, "running", {metadata = {}, status = {phase = "Running"}}, "Progressing", "running")
expect(r, "succeeded", {metadata = {}, status = {phase = "Succeeded", message = "copied 3 objects",
  conditions = {{type = "Complete", status = "True"}, {type = "Failed", status = "False"}}}}, "Healthy", "copied 3")
expect(r, "failed", {metadata = {}, status = {phase = "Failed", reason = "InvalidCredentials", message = "s3: refused",
  conditions = {{type = "Complete", status = "False"}, {type = "Failed", status = "True"}}}}, "Degraded", "InvalidCredentials")
expect(r, "rejected", {metadata = {}, status = {phase = "Rejected", reason = "ResidencyViolation", message = "eastus",
  conditions = {{type = "Failed", status = "True"}, {type = "PolicyViolation", status = "True"}}}}, "Degraded", "ResidencyViolation")
expect(r, "failed, phase only", {metadata = {}, status = {phase = "Failed", reason = "DeadlineExceeded"}}, "Degraded", "DeadlineExceeded")

if failures > 0 then
  print(string.format("argocd health: %d of %d checks failed", failures, count))
  os.exit(1)
end
print(string.format("argocd health: %d checks passed", count))
