"""What router and workers share on the wire: status errors, auth, TLS, gRPC server helpers,
proto <-> engine conversion. Imports neither router nor worker."""
