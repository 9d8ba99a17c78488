//! Scripted fake backend for actor-level tests.
