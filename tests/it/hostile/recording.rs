//! Recording under pressure: overflowing numbers, queue drops, audit = "required", crashes.
