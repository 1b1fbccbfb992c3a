-- Health of a chat.coder.com/v1alpha1 ChatWorkspace: one Coder workspace that
-- chatworkspace-operator keeps Running or Stopped, as spec.desiredState says.
--
-- Healthy:     Ready=True and desiredState Running (the workspace runs, its
--              chat agent is connected and reachable).
-- Suspended:   Ready=True and desiredState Stopped, or a workspace Coder
--              stopped by its own policy or a person stopped in Coder, which
--              the operator respects until a start is asked for.
-- Degraded:    Stalled=True: nothing changes until a person (or a spec
--              change) acts; the message says what and what to do. From an
--              operator that writes no Stalled: Degraded=True.
-- Progressing: everything else (the operator is at work: Reconciling=True,
--              which includes retrying while Coder is unavailable), and a
--              status the operator has not written for the current
--              generation yet.
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

-- A stop made in Coder, which the operator respects until a start is
-- asked for: Suspended, though it is Stalled too.
if ready.status ~= "True" and (ready.reason == "StoppedByCoder" or ready.reason == "StoppedOutside") then
  hs.status = "Suspended"
  hs.message = ready.message
  return hs
end

local stalled = condition("Stalled")
if stalled == nil then
  stalled = condition("Degraded")
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end

-- Working towards the desired state; also while retrying after Coder was
-- unavailable, when Ready may still speak of the previous desired state.
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message
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

hs.status = "Progressing"
hs.message = ready.message
return hs
