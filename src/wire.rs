//! TODO(core): wire
