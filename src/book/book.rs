//! TODO(owner): see the module map in lib.rs.
