"""gRPC plumbing shared by the router and both worker kinds (servers, engine loop, conversions)."""
