//! hierarchy-executor
