// Behavioural model of the Lattice ECP5 DP16KD in the one configuration hw/bram.py instantiates: port A
// writes (WEA, CEA high, DATA_WIDTH_A bits), port B reads with its output register (REGMODE_B =
// "OUTREG", CEB high, OCEB the output register's clock enable), both ports on the same clock, chip
// selects 0 with CSDECODE "0b000", resets tied low.  Written for the RTL tests (tests/test_rtl_engine.py)
// from the ECP5 sysMEM usage guide (FPGA-TN-02204): a port of width 18 / 9 / 4 / 2 / 1 bits addresses
// its rows with ADx[13:4] / [13:3] / [13:2] / [13:1] / [13:0]; on the rising clock edge the address
// register of port B loads (CEB) and the array is read into the port's data latch, and the output
// register loads that latch's previous value when OCEB is high.  A read of a row written on the same
// edge returns the old row (the users never rely on it, hw/bram.py).  yosys ships no simulation model
// of this cell; this one is the project's, not Lattice's.  Any other parameter value stops the simulation.
module DP16KD #(
    parameter DATA_WIDTH_A = 18, parameter DATA_WIDTH_B = 18,
    parameter REGMODE_A = "NOREG", parameter REGMODE_B = "NOREG",
    parameter RESETMODE = "SYNC", parameter ASYNC_RESET_RELEASE = "SYNC",
    parameter CSDECODE_A = "0b000", parameter CSDECODE_B = "0b000",
    parameter WRITEMODE_A = "NORMAL", parameter WRITEMODE_B = "NORMAL", parameter GSR = "ENABLED"
) (
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    localparam LSB = DATA_WIDTH_A == 18 ? 4 : DATA_WIDTH_A == 9 ? 3 : DATA_WIDTH_A == 4 ? 2 : DATA_WIDTH_A == 2 ? 1 : 0;
    localparam ROWS = 16384 >> LSB;
    initial begin
        if (DATA_WIDTH_A != DATA_WIDTH_B || !(DATA_WIDTH_A == 18 || DATA_WIDTH_A == 9 || DATA_WIDTH_A == 4
            || DATA_WIDTH_A == 2 || DATA_WIDTH_A == 1) || REGMODE_A != "NOREG" || REGMODE_B != "OUTREG"
            || CSDECODE_A != "0b000" || CSDECODE_B != "0b000" || WRITEMODE_A != "NORMAL" || GSR != "DISABLED")
            $fatal(1, "DP16KD model: only the configuration of hw/bram.py is modelled");
    end
    wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire [13 - LSB:0] row_a = ada[13:LSB];
    wire [13 - LSB:0] row_b = adb[13:LSB];
    reg [DATA_WIDTH_A - 1:0] mem [0:ROWS - 1];
    reg [DATA_WIDTH_B - 1:0] latch_b = 0, out_b = 0;
    always @(posedge CLKA) begin
        if (RSTA || RSTB || WEB || CSA0 || CSA1 || CSA2 || CSB0 || CSB1 || CSB2 || !CEA || !CEB)
            $fatal(1, "DP16KD model: resets, port B writes, chip selects and port clock enables are not modelled");
        if (WEA)
            mem[row_a] <= dia[DATA_WIDTH_A - 1:0];
    end
    always @(posedge CLKB) begin
        latch_b <= mem[row_b];
        if (OCEB)
            out_b <= latch_b;
    end
    wire [17:0] dob = {{(18 - DATA_WIDTH_B){1'b0}}, out_b};
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = 18'd0;
endmodule
