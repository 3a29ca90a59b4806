# Turns a file into a C source holding it as a NUL-terminated array, so msg-api serves its
# OpenAPI document and docs page from the binary (no files to ship, no CDN).
# Usage: cmake -DINPUT=file -DOUTPUT=file.c -DNAME=symbol -P embed.cmake
file(READ "${INPUT}" content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," content "${content}")
file(WRITE "${OUTPUT}"
  "/* Generated from ${INPUT} by cmake/embed.cmake; do not edit. */\n"
  "#include <stddef.h>\n"
  "extern const char ${NAME}[];\n"
  "extern const size_t ${NAME}_len;\n"
  "const char ${NAME}[] = {${content} 0x00};\n"
  "const size_t ${NAME}_len = sizeof ${NAME} - 1;\n")
