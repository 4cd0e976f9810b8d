//! Typed configuration; every default documented with its unit.
