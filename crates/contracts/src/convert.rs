//! Conversions between `pb` and the domain.
