//! md v1.2 superblock and write-intent bitmap: byte-exact encode/decode.
