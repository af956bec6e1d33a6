//! chassis-observability (being written).
