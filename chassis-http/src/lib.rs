//! chassis-http (being written).
