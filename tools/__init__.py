"""Developer and operator tooling: offline Terraform, the AWS API emulator, checks."""
