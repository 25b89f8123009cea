"""Policy: plain data in (findings, config), a Decision out. No gRPC, no regexes."""
