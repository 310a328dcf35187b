//! Capability dropping (being written).
