//! TODO(core): net
