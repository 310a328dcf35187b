//! client (being written)
