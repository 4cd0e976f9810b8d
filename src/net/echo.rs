//! TODO(ws owner): conformance echo server.
