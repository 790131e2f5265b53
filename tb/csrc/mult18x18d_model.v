// Behavioural model of the Lattice ECP5 MULT18X18D in the one configuration hw/dsp.py instantiates:
// input registers A and B and the output register on CLK0 / CE0 (REG_INPUTA_CLK = REG_INPUTB_CLK =
// REG_OUTPUT_CLK = "CLK0"), no pipeline register, RST0 tied low, SIGNEDA / SIGNEDB selecting a
// signed operand.  Written for the RTL tests (tests/test_hw_dsp.py) from the ECP5 sysDSP user guide
// (FPGA-TN-02205): P = A * B, 36 bits, each register loaded on the rising clock edge when its CE is
// high.  yosys ships no simulation model of this cell; this one is the project's, not Lattice's.
// Any other parameter value stops the simulation.
module MULT18X18D #(
    parameter REG_INPUTA_CLK = "NONE", parameter REG_INPUTA_CE = "CE0", parameter REG_INPUTA_RST = "RST0",
    parameter REG_INPUTB_CLK = "NONE", parameter REG_INPUTB_CE = "CE0", parameter REG_INPUTB_RST = "RST0",
    parameter REG_INPUTC_CLK = "NONE", parameter REG_PIPELINE_CLK = "NONE",
    parameter REG_OUTPUT_CLK = "NONE", parameter REG_OUTPUT_CE = "CE0", parameter REG_OUTPUT_RST = "RST0",
    parameter GSR = "ENABLED", parameter RESETMODE = "SYNC", parameter MULT_BYPASS = "DISABLED"
) (
    input A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input CLK0, CE0, RST0, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    output P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17, P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33, P34, P35
);
    initial begin
        if (REG_INPUTA_CLK != "CLK0" || REG_INPUTB_CLK != "CLK0" || REG_OUTPUT_CLK != "CLK0"
            || REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_OUTPUT_CE != "CE0"
            || REG_PIPELINE_CLK != "NONE" || REG_INPUTC_CLK != "NONE" || MULT_BYPASS != "DISABLED")
            $fatal(1, "MULT18X18D model: only the configuration of hw/dsp.py is modelled");
    end
    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    reg [17:0] a_q = 18'd0, b_q = 18'd0;
    reg [35:0] p_q = 36'd0;
    reg sa_q = 1'b0, sb_q = 1'b0;
    wire signed [36:0] a_ext = {{19{sa_q & a_q[17]}}, a_q};
    wire signed [36:0] b_ext = {{19{sb_q & b_q[17]}}, b_q};
    wire signed [73:0] prod = a_ext * b_ext;
    always @(posedge CLK0) begin
        if (CE0) begin
            a_q <= a;
            b_q <= b;
            sa_q <= SIGNEDA;
            sb_q <= SIGNEDB;
            p_q <= prod[35:0];
        end
        if (RST0) $fatal(1, "MULT18X18D model: RST0 is not modelled");
    end
    assign P0 = p_q[0];
    assign P1 = p_q[1];
    assign P2 = p_q[2];
    assign P3 = p_q[3];
    assign P4 = p_q[4];
    assign P5 = p_q[5];
    assign P6 = p_q[6];
    assign P7 = p_q[7];
    assign P8 = p_q[8];
    assign P9 = p_q[9];
    assign P10 = p_q[10];
    assign P11 = p_q[11];
    assign P12 = p_q[12];
    assign P13 = p_q[13];
    assign P14 = p_q[14];
    assign P15 = p_q[15];
    assign P16 = p_q[16];
    assign P17 = p_q[17];
    assign P18 = p_q[18];
    assign P19 = p_q[19];
    assign P20 = p_q[20];
    assign P21 = p_q[21];
    assign P22 = p_q[22];
    assign P23 = p_q[23];
    assign P24 = p_q[24];
    assign P25 = p_q[25];
    assign P26 = p_q[26];
    assign P27 = p_q[27];
    assign P28 = p_q[28];
    assign P29 = p_q[29];
    assign P30 = p_q[30];
    assign P31 = p_q[31];
    assign P32 = p_q[32];
    assign P33 = p_q[33];
    assign P34 = p_q[34];
    assign P35 = p_q[35];
endmodule
