package messages_test

// Public test keys (generated for these tests; the private halves were discarded).
const (
	keyRSA     = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDeKX+h7T1RxJFTiq3qTnGOgcLGzpYbWEaXbhKViToRJqdYJND8LuxyUkJFW+DUoKFg/vhKxjUSh+UNn8wgwPB5c2C5jNcfQWy2YoOYot2LCGNPv7QUL/WHhnq5PgRm/Uzvy/T2etUvaL184osQZehuZ456YHRZpJ13tiRJxAl7uR1E1bZsXi1b06wC5hMcdfWEu0SKCKmbLMXnj4pVURNhzksmksTrweKco5ztAW0VuWMziaA3Gt3/Jd9/AJGfNGXvaPrhRFuXOr/ZmDQsaZ70mrbmTiNKMORsW+EgzWMX94DM59989Vn17fmi5X97n4ZnmTa31aMpvYvsApbuuIZx bob@example.edu"
	keyECDSA   = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDR2dnTUYIMckU7MiFIubJPX99iVuOPSJcYWFee8gRcUemMIDO1HPSu8oXr8cusXyM6mGOkt08QtStUx9/rEowM="
	keyEd25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE+0Z/SJ3VJqv1SoX4ykopcN/DP5WKEhRzOakGwFOkZ6 carol@host"
)
