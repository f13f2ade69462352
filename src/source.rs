//! Live sources: stdin, a `.ts` file paced at real time, an ffmpeg child, the demo clip (being written).
