//! Kubernetes' own rules, as this issuer applies them: which names are valid
//! and what an audience may hold. The bottom layer: used by `config` and by the
//! request path (`issuer`, `http`, the token agent), it imports nothing of the
//! crate (no `config`, `keys`, `issuer`, `http`, `server`, `serve`, `client`).

pub mod names;
