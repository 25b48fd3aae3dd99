//! lameduck SDK
