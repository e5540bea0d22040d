//! Tests of the core against an in-process server, without a mount.
