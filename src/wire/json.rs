//! JSON rendering of server messages (PROTOCOL §6).
