//! QBER sources.
