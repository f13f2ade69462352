//! TODO(core): stream
