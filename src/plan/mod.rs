//! Pure decisions: which blocks to read, retention.
