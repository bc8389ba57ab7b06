//! Demo backends (being written).
