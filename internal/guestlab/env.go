package guestlab

import "os"

func requireLab() bool { return os.Getenv("VCLQ_REQUIRE_GUESTLAB") == "1" }
