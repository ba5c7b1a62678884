//! Development certificates.
