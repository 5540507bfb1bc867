-- Orthanc auto-routing to the spine DICOM node: when an MR series is stable (no new instance
-- for StableAge seconds) and looks like spine, send the whole series to the modality
-- "spine-node" (DicomModalities in orthanc.json). The node decides the rest with its own
-- routing rules (T2, not STIR/localiser); this filter only keeps brain and body MR at home.
-- Results coming back from the node (SEG, SR) are not MR and are never routed: no loop.

local SPINE_WORDS = { "spine", "cord", "cerv", "thor", "lumb", "c-spine", "t-spine", "l-spine",
                      "cspine", "tspine", "lspine", "hws", "bws", "lws" }

local function looks_like_spine(tags)
  for _, key in ipairs({ "BodyPartExamined", "SeriesDescription", "ProtocolName" }) do
    local value = string.lower(tags[key] or "")
    for _, word in ipairs(SPINE_WORDS) do
      if string.find(value, word, 1, true) then
        return true
      end
    end
  end
  return false
end

function OnStableSeries(seriesId, tags, metadata)
  if tags["Modality"] ~= "MR" or not looks_like_spine(tags) then
    return
  end
  print("autoroute: series " .. seriesId .. " -> spine-node")
  -- one C-STORE association for the whole series, run as an Orthanc job (retried by Orthanc)
  RestApiPost("/modalities/spine-node/store", '{"Resources": ["' .. seriesId .. '"], "Synchronous": false}')
end
