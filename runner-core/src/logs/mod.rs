//! Byte-exact log capture with rotation, and the log reader.
