//! TODO(core): store
