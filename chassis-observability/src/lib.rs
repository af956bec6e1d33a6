//! chassis-observability (being written).

pub mod propagation;
