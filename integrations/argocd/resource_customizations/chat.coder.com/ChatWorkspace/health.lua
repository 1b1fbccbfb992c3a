-- Health of a chat.coder.com/v1alpha1 ChatWorkspace: one Coder workspace that
-- chatworkspace-operator keeps Running or Stopped, as spec.desiredState says.
--
-- Healthy:     Ready=True and desiredState Running (the workspace runs, its
--              chat agent is connected and reachable).
-- Suspended:   Ready=True and desiredState Stopped, or a workspace Coder
--              stopped by its own policy or a person stopped in Coder, which
--              the operator respects until a start is asked for.
-- Degraded:    Degraded=True: something a person must look at (the message
--              says what and what to do).
-- Progressing: everything else, and a status the operator has not written
--              for the current generation yet.
local hs = {}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the workspace"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the latest spec"
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message
  return hs
end

local desired = "Running"
if obj.spec ~= nil and obj.spec.desiredState ~= nil then
  desired = obj.spec.desiredState
end

if ready.status == "True" then
  if desired == "Stopped" then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = ready.message
  return hs
end

if ready.reason == "StoppedByCoder" or ready.reason == "StoppedOutside" then
  hs.status = "Suspended"
  hs.message = ready.message
  return hs
end

hs.status = "Progressing"
hs.message = ready.message
return hs
