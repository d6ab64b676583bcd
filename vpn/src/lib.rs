//! NX1's WireGuard data plane.
//!
//! The protocol core is boringtun's `noise::Tunn`; this crate owns everything around it:
//! keys, peers, cryptokey routing (allowed IPs), handshake rate limiting, the TUN and UDP I/O
//! loops, exit NAT, and wg-quick configs. It never reads a config file or prints; the `nx1`
//! binary wires it up.
//!
//! ```
//! use nx1_vpn::keys::PrivateKey;
//!
//! let key = PrivateKey::generate();
//! let encoded = key.to_base64();
//! let again = PrivateKey::from_base64(&encoded).unwrap();
//! assert_eq!(key.public_key(), again.public_key());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowed_ips;
pub mod budget;
pub mod device;
pub mod exit;
pub mod io;
pub mod keys;
pub mod killswitch;
pub mod peer;
#[cfg(test)]
mod protocol_tests;
pub mod ratelimit;
mod receive;
pub mod relay;
mod send;
pub mod timers;
pub mod uapi;
pub mod wg_quick;

pub use ip_network::IpNetwork;
