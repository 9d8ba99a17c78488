//! Control-socket codec and client.
