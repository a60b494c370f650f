//! Sans-IO protocol.
