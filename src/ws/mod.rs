//! TODO(ws owner)
