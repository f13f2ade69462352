//! TODO(core): rate
