//! Integration tests: the real server on 127.0.0.1:0, real clients.

mod bad_input;
mod cli;
mod config;
mod delivery;
mod delivery_faults;
mod documents;
mod errors;
mod hardening;
mod harness;
mod interop;
mod key_safety;
mod keys;
mod kubectl;
mod minting;
mod production;
mod review;
mod rotation;
