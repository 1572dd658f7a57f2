//! Diagnostics: problems in a file, reported with file:line:col and key.
//! (Implementation owned by the config/driver loader work.)
