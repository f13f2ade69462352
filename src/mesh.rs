//! TODO(core): mesh
