//! Integration tests: the real server on 127.0.0.1:0, real clients.

mod bad_input;
mod cli;
mod client_certs;
mod client_formats;
mod client_usability;
mod clusters_cli;
mod config;
mod delivery;
mod delivery_faults;
mod errors;
mod federation;
mod hardening;
mod harness;
mod interop;
mod key_safety;
mod keys;
mod kubectl;
mod limits;
mod listeners;
mod minting;
mod observability;
mod publish_only;
mod python_client;
mod review;
mod rotation;
mod signer;
