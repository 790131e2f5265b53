// Behavioural model of the Lattice ECP5 TRELLIS_FF in the one configuration hw/kept.py instantiates:
// clock CLK (not inverted), clock enable CE, synchronous reset LSR over CE to 0, no GSR.  Written for
// the RTL tests (tests/test_rtl_engine.py) from yosys' cell library description of this cell: on the
// rising clock edge Q takes 0 when LSR is high, else DI when CE is high.  The project's model, not
// Lattice's or yosys'.  Any other parameter value stops the simulation.
module TRELLIS_FF #(
    parameter GSR = "ENABLED", parameter CEMUX = "1", parameter CLKMUX = "CLK", parameter LSRMUX = "LSR",
    parameter SRMODE = "LSR_OVER_CE", parameter REGSET = "RESET"
) (
    input CLK, LSR, CE, DI,
    output reg Q
);
    initial begin
        if (GSR != "DISABLED" || CEMUX != "CE" || CLKMUX != "CLK" || LSRMUX != "LSR"
            || SRMODE != "LSR_OVER_CE" || REGSET != "RESET")
            $fatal(1, "TRELLIS_FF model: only the configuration of hw/kept.py is modelled");
        Q = 1'b0;
    end
    always @(posedge CLK) begin
        if (LSR)
            Q <= 1'b0;
        else if (CE)
            Q <= DI;
    end
endmodule
