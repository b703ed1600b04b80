// The visible slots of each query row, written by the host per run as the
// CPU lists them: row r's header at vis[vis_offset + 3r] is (prefix,
// extras_at, extras); slots 0..prefix are visible, then each extra entry
// (slot, position) at vis[extras_at + 2e]. A tree row's extra slots sit at
// their row's slot but stand at their depth in the sequence (the position),
// which picks their softmax chunk and value lane.
layout(std430, binding = 0) readonly buffer Vis { uint vis[]; };

uint visible_len(uint vis_offset, uint r) {
    return vis[vis_offset + 3u * r] + vis[vis_offset + 3u * r + 2u];
}

// Slot and sequence position of visible entry i of row r.
uvec2 visible_entry(uint vis_offset, uint r, uint i) {
    uint prefix = vis[vis_offset + 3u * r];
    if (i < prefix) {
        return uvec2(i, i);
    }
    uint at = vis[vis_offset + 3u * r + 1u] + 2u * (i - prefix);
    return uvec2(vis[at], vis[at + 1u]);
}
