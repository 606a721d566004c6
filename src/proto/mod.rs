//! Wire formats shared between processes that are not parent and engine:
//! the control socket (engine <-> qkdctl).
pub mod ctl;
pub mod peer;
pub mod signify_key;
