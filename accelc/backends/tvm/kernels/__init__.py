"""What the default CPU schedules know about kernels and hardware, as data: block tags (what a block
computes), ISA capabilities (what the target can run) and the int8 micro-kernel table (which
instruction sequence computes an int8 GEMM on which ISA, and the weight layout it needs)."""
