//! chassis-messaging (being written).
